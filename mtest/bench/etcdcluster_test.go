package main

import (
	"strings"
	"testing"
)

func TestHandledTxns(t *testing.T) {
	tests := []struct {
		name    string
		metrics string
		want    int64
		wantErr bool
	}{
		{
			name:    "no samples",
			metrics: "# HELP grpc_server_handled_total x\n# TYPE grpc_server_handled_total counter\n",
			want:    0,
		},
		{
			name: "codes summed, other methods and services ignored",
			metrics: `grpc_server_handled_total{grpc_code="OK",grpc_method="Txn",grpc_service="etcdserverpb.KV",grpc_type="unary"} 1234
grpc_server_handled_total{grpc_code="FailedPrecondition",grpc_method="Txn",grpc_service="etcdserverpb.KV",grpc_type="unary"} 6
grpc_server_handled_total{grpc_code="OK",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 99
grpc_server_handled_total{grpc_code="OK",grpc_method="Txn",grpc_service="other.KV",grpc_type="unary"} 7
grpc_server_started_total{grpc_method="Txn",grpc_service="etcdserverpb.KV",grpc_type="unary"} 1240
`,
			want: 1240,
		},
		{
			name:    "exponent notation",
			metrics: `grpc_server_handled_total{grpc_code="OK",grpc_method="Txn",grpc_service="etcdserverpb.KV",grpc_type="unary"} 1.5e+06` + "\n",
			want:    1500000,
		},
		{
			name:    "bad value",
			metrics: `grpc_server_handled_total{grpc_code="OK",grpc_method="Txn",grpc_service="etcdserverpb.KV",grpc_type="unary"} many` + "\n",
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := handledTxns(strings.NewReader(tt.metrics))
			if (err != nil) != tt.wantErr {
				t.Fatalf("error %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("got %d, want %d", got, tt.want)
			}
		})
	}
}
