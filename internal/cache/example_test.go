package cache_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/keelplatform/keel/internal/cache"
)

// A service reads items through a cache, with a filter of the item ids
// that exist rebuilt from its database at start, and invalidates an item
// after changing it. Without Config.RedisAddr the cache lives in process
// memory; with it, the same code shares the cache through Redis.
func Example() {
	ctx := context.Background()
	db := map[string]string{"item-1": "hammer", "item-2": "saw"}
	loads := 0
	load := func(id string) cache.Loader {
		return func(context.Context) ([]byte, error) {
			loads++
			v, ok := db[id]
			if !ok {
				return nil, fmt.Errorf("item %s: %w", id, cache.ErrNotFound)
			}
			return []byte(v), nil
		}
	}

	items, err := cache.New(ctx, cache.DefaultConfig(), cache.Options{Name: "inventory:item"})
	if err != nil {
		panic(err)
	}
	defer items.Close()
	ids, err := items.NewFilter("ids", cache.DefaultFilterConfig())
	if err != nil {
		panic(err)
	}
	if err := ids.Rebuild(ctx, cache.IDs([]string{"item-1", "item-2"})); err != nil {
		panic(err)
	}

	v, _ := items.GetChecked(ctx, ids, "item-1", load("item-1"))
	v, _ = items.GetChecked(ctx, ids, "item-1", load("item-1")) // cached
	fmt.Println(string(v), "loads:", loads)

	_, err = items.GetChecked(ctx, ids, "item-404", load("item-404")) // rejected by the filter
	fmt.Println(errors.Is(err, cache.ErrNotFound), "loads:", loads)

	db["item-1"] = "claw hammer"
	_ = items.Invalidate(ctx, "item-1") // after the write commits
	v, _ = items.GetChecked(ctx, ids, "item-1", load("item-1"))
	fmt.Println(string(v), "loads:", loads)
	// Output:
	// hammer loads: 1
	// true loads: 1
	// claw hammer loads: 2
}
