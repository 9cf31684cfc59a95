# The `gf` image (coordinator and worker). Built offline by scripts/docker-images.sh,
# whose build context is a staged root file system: the host-built release binary, the
# shared libraries `ldd` reports for it plus the dynamic loader, busybox (so workers can
# run `sh -c` jobs) and an empty /tmp. No base image is pulled.
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/bin \
    GF_NATS_URL=nats://nats:4222 \
    GF_LOG_FORMAT=json \
    GF_SCRATCH_DIR=/tmp/gf
EXPOSE 8080 9464
ENTRYPOINT ["/usr/local/bin/gf"]
CMD ["--help"]
