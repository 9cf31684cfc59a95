# Prometheus from the host's Debian `prometheus` package: the binary, its shared
# libraries and web assets in an empty image. Built by scripts/docker-images.sh.
# docker-compose mounts deploy/prometheus at /etc/prometheus.
FROM scratch
COPY rootfs/ /
EXPOSE 9090
VOLUME /prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", "--web.listen-address=:9090"]
