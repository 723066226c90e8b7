# shadowreplay's container image: one image for every stage; the command picks the stage.
#
#   docker build -t shadowreplay .
#   docker run --rm shadowreplay --version
#   docker run --rm -p 24224:24224 -p 9464:9464 shadowreplay \
#       collect --bus kafka://kafka:9092 --listen 0.0.0.0:24224 --metrics-listen 0.0.0.0:9464
#
# The stages listen on 127.0.0.1 by default; in a container, give 0.0.0.0 addresses as
# above (compose.yaml does). Not built in this repository's CI (it has no Docker engine);
# tests/unit/test_packaging.py checks its ports and paths against the code.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY shadowreplay ./shadowreplay
COPY collector ./collector
COPY replayer ./replayer
COPY comparer ./comparer
COPY dashboards ./dashboards
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/shadowreplay shadowreplay
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER shadowreplay
# The divergence store (comparer) and a SQLite bus, if used, live here: mount a volume.
WORKDIR /var/lib/shadowreplay
VOLUME ["/var/lib/shadowreplay"]
# forward protocol (collector), /metrics of collect, replay, compare
EXPOSE 24224 9464 9465 9466
STOPSIGNAL SIGTERM
ENTRYPOINT ["shadowreplay"]
CMD ["--help"]
