# Alertmanager from the host's Debian `prometheus-alertmanager` package, in an empty
# image. Built by scripts/docker-images.sh; docker-compose mounts
# deploy/alertmanager at /etc/alertmanager.
FROM scratch
COPY rootfs/ /
EXPOSE 9093
VOLUME /alertmanager
ENTRYPOINT ["/usr/bin/prometheus-alertmanager"]
CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager", "--web.listen-address=:9093", "--cluster.listen-address="]
