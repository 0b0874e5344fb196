package handler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/keelplatform/keel/internal/cache"
	"github.com/keelplatform/keel/services/inventory/internal/stock"
)

// Cached is [Items] through a cache: reads of an item go to the cache,
// which loads from the store on a miss; skus the filter knows cannot
// exist are answered not found without touching the store; a change
// invalidates the item everywhere (in Redis, and in every process's
// client-side copy).
type Cached struct {
	Store  Store
	Cache  *cache.Cache
	Filter *cache.Filter
	Logger *slog.Logger
}

// Get implements [Items].
func (c Cached) Get(ctx context.Context, sku string) (stock.Item, error) {
	data, err := c.Cache.GetChecked(ctx, c.Filter, sku, func(ctx context.Context) ([]byte, error) {
		it, err := c.Store.GetItem(ctx, sku)
		if errors.Is(err, stock.ErrNotFound) {
			return nil, fmt.Errorf("item %s: %w", sku, cache.ErrNotFound)
		}
		if err != nil {
			return nil, err
		}
		return json.Marshal(it)
	})
	if errors.Is(err, cache.ErrNotFound) {
		return stock.Item{}, stock.ErrNotFound
	}
	if err != nil {
		return stock.Item{}, err
	}
	var it stock.Item
	if err := json.Unmarshal(data, &it); err != nil {
		return stock.Item{}, fmt.Errorf("cached item %s: %w", sku, err)
	}
	return it, nil
}

// Changed implements [Items]: the item's cached copies go, and its sku
// joins the filter of skus that exist.
func (c Cached) Changed(ctx context.Context, sku string) {
	if err := c.Filter.Add(ctx, sku); err != nil {
		c.Logger.WarnContext(ctx, "item filter: add", slog.String("sku", sku), slog.Any("error", err))
	}
	if err := c.Cache.Invalidate(ctx, sku); err != nil {
		// The cache queues the invalidation and stops trusting the key
		// until Redis takes it.
		c.Logger.WarnContext(ctx, "item cache: invalidate", slog.String("sku", sku), slog.Any("error", err))
	}
}
