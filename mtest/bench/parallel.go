package main

import (
	"context"
	"sync"
	"sync/atomic"
)

// forEach calls f for 0 <= i < n, from workers goroutines taking the next
// index as they finish one, and returns the first error (the others stop
// taking indexes then), or the context's if it ends first.
func forEach(ctx context.Context, n, workers int, f func(i int) error) error {
	var next atomic.Int64
	var failed atomic.Pointer[error]
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || failed.Load() != nil || ctx.Err() != nil {
					return
				}
				if err := f(i); err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	if p := failed.Load(); p != nil {
		return *p
	}
	return ctx.Err()
}
