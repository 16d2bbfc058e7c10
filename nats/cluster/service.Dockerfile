# order-service image for nats/cluster/compose.yaml, built with `make service-image` from the
# release binary and the shared libraries it links (`ldd`), copied into rootfs/ at their paths:
# no base image, so nothing is pulled from a registry.
FROM scratch

COPY rootfs/ /

# The SQLite file lives in a volume at /data.
VOLUME /data
EXPOSE 8081

ENTRYPOINT ["/order-service"]
CMD ["serve"]
