# Build the release binary, then ship it alone on a distroless, non-root base.
FROM rust:1.89-bookworm AS build
WORKDIR /src
# The workspace manifest names the stand-in crate, so its sources come along.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY tests/runai-standin ./tests/runai-standin
RUN cargo build --release --locked --bin runai-token-sync

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/runai-token-sync /usr/local/bin/runai-token-sync
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/runai-token-sync"]
CMD ["run"]
