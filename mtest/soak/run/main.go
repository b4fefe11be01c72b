// Command run is `make soak`: the chaos soak of package soak on a fresh
// cluster, its report written into docs/reliability.md. It needs root and
// the binaries of `make build`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/coil-project/coil/mtest/soak"
)

func main() {
	cfg := soak.Config{Log: os.Stdout}
	var seed int64
	flag.Int64Var(&seed, "seed", 0, "seed of the fault schedule and the workers' choices; 0 draws one (printed)")
	flag.IntVar(&cfg.Lifecycles, "lifecycles", 10000, "pod lifecycles to run")
	flag.IntVar(&cfg.Workers, "workers", 8, "concurrent workers")
	flag.IntVar(&cfg.SmallWorkers, "small-workers", 3, "workers using the small pool (exhausted and refilled)")
	flag.DurationVar(&cfg.FaultGapMin, "fault-gap-min", 10*time.Second, "shortest quiet time between faults")
	flag.DurationVar(&cfg.FaultGapMax, "fault-gap-max", 40*time.Second, "longest quiet time between faults")
	flag.DurationVar(&cfg.CheckInterval, "check-interval", 3*time.Second, "period of the continuous checks")
	report := flag.String("report", "docs/reliability.md", "document whose generated part receives the report; empty: print it only")
	flag.Parse()
	if os.Getuid() != 0 {
		fmt.Fprintln(os.Stderr, "the soak needs root: it builds the cluster out of network namespaces")
		os.Exit(2)
	}
	if seed == 0 {
		seed = time.Now().UnixNano() & (1<<53 - 1)
	}
	cfg.Seed = uint64(seed)
	fmt.Printf("soak seed %d\n", seed)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := soak.Run(ctx, cfg)
	if res != nil {
		cmd := fmt.Sprintf("make soak SOAK_ARGS='-seed %d -lifecycles %d -workers %d -small-workers %d -fault-gap-min %s -fault-gap-max %s'",
			seed, cfg.Lifecycles, cfg.Workers, cfg.SmallWorkers, cfg.FaultGapMin, cfg.FaultGapMax)
		md := res.Markdown(cmd)
		fmt.Println(md)
		if *report != "" {
			if werr := soak.WriteReport(*report, md); werr != nil {
				fmt.Fprintln(os.Stderr, "write report:", werr)
				os.Exit(1)
			}
			fmt.Println("report written to", *report)
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "soak (seed %d) failed: %v\n", seed, err)
		os.Exit(1)
	}
}
