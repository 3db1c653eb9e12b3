"""``jobcast up``: Redis, the web server and workers on one machine, under one supervisor."""
