// Package peerpb holds the generated protobuf and gRPC code of the peer
// protocol (peer.proto). Regenerate with `go generate ./internal/peerpb`
// (needs protoc, protoc-gen-go and protoc-gen-go-grpc on PATH; see
// docs/ARCHITECTURE.md).
package peerpb

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative peer.proto
