# syntax=docker/dockerfile:1
FROM golang:1.22 AS Build
WORKDIR /src
ENV CGO_ENABLED=0
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/.cache/go-build go build -o /out/app ./cmd/app

FROM build AS test
RUN go test ./...

FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/app /app
COPY --from=0 --chmod=0755 /out/app /app2
USER nonroot:nonroot
ENTRYPOINT ["/app"]
