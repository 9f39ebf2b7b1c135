package guest

import (
	"context"
	"testing"
	"time"
)

func TestBootAndAgent(t *testing.T) {
	vm := Boot(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	infs, err := vm.Agent.ListInterfaces(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("list_interfaces took %v", time.Since(start))
	if len(infs) != 1 || infs[0].Name != "lo" {
		t.Fatalf("guest interfaces: want only lo, got %+v", infs)
	}
	if _, err := vm.QMP.Execute(ctx, "query-status", nil); err != nil {
		t.Fatal(err)
	}
}
