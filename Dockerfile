# One image for every Python service of Jobcast (web, worker, producer); see docker-compose.yml.
# No "# syntax=" line on purpose: it would make BuildKit pull a frontend image, and this file
# must also build with the classic builder and without a registry.
#
# The base image is a build argument, so a mirror or a stand-in can be used:
#   docker build --build-arg PYTHON_IMAGE=mirror.example/python:3.12-slim -t jobcast:local .
ARG PYTHON_IMAGE=python:3.12-slim

# Stage 1: the dependency list (project.dependencies and build-system.requires) out of
# pyproject.toml. Stage 2 copies only this list, so editing anything else in pyproject.toml
# (version, pytest settings) keeps the dependency layer cached.
FROM ${PYTHON_IMAGE} AS requirements
COPY pyproject.toml /tmp/
RUN python -c "import tomllib; p = tomllib.load(open('/tmp/pyproject.toml', 'rb')); \
print(*p['project'].get('dependencies', []), *p['build-system']['requires'], sep=chr(10))" \
      > /tmp/requirements.txt

FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The services run as this unprivileged user.
RUN useradd --create-home --home-dir /home/jobcast --uid 10001 --shell /usr/sbin/nologin jobcast

WORKDIR /src

# 1. Dependencies and the build backend: rebuilt only when that list changes.
COPY --from=requirements /tmp/requirements.txt ./
RUN pip install -r requirements.txt

# 2. The application (.dockerignore lets in only what the package needs). No network needed here.
COPY . ./
RUN pip install --no-deps --no-build-isolation . \
 && rm -rf build ./*.egg-info

# Run from the home directory, not /src, so the services import the installed package (as a
# user's pip install would), not the source tree.
WORKDIR /home/jobcast
USER jobcast

# Healthchecks use Python (present in every base image), e.g. for web:
#   python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"
CMD ["jobcast", "web", "--bind", "0.0.0.0", "--port", "8000"]
