package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/internal/pgtest"
	"github.com/keelplatform/keel/services/user/internal/account"
	"github.com/keelplatform/keel/services/user/internal/store"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// backends opens a fresh, empty store on each database the service runs on.
var backends = []struct {
	name string
	open func(t *testing.T) *store.Store
}{
	{"sqlite", func(t *testing.T) *store.Store {
		return open(t, database.Config{Driver: database.DriverSQLite, DataDir: t.TempDir(), Name: "user"})
	}},
	{"postgres", func(t *testing.T) *store.Store {
		return open(t, database.Config{Driver: database.DriverPostgres, DSN: pgtest.Start(t)})
	}},
}

func open(t *testing.T, cfg database.Config) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return s
}

var cases = []struct {
	name string
	run  func(t *testing.T, s *store.Store)
}{
	{"create and get", testCreateAndGet},
	{"duplicate email in another case", testDuplicateEmail},
	{"unknown user", testUnknown},
	{"update display name", testUpdate},
	{"list pages", testList},
}

func TestStore(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) { c.run(t, b.open(t)) })
			}
		})
	}
}

func testCreateAndGet(t *testing.T, s *store.Store) {
	ctx := context.Background()
	before := time.Now().Add(-time.Second)
	u, err := s.Create(ctx, account.NewUser{Email: "  Ada@Example.COM ", PasswordHash: "$hash$", DisplayName: "Ada"})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if u.ID == uuid.Nil || u.Email != "ada@example.com" || u.DisplayName != "Ada" || u.PasswordHash != "$hash$" {
		t.Fatalf("Create returned %+v", u)
	}
	if u.CreateTime.Before(before) || !u.UpdateTime.Equal(u.CreateTime) {
		t.Fatalf("times: create %v update %v", u.CreateTime, u.UpdateTime)
	}
	byID, err := s.GetByID(ctx, u.ID)
	if err != nil {
		t.Fatalf("GetByID: %v", err)
	}
	if byID != u {
		t.Fatalf("GetByID = %+v, want %+v", byID, u)
	}
	byEmail, err := s.GetByEmail(ctx, "ADA@example.com")
	if err != nil {
		t.Fatalf("GetByEmail: %v", err)
	}
	if byEmail != u {
		t.Fatalf("GetByEmail = %+v, want %+v", byEmail, u)
	}
}

func testDuplicateEmail(t *testing.T, s *store.Store) {
	ctx := context.Background()
	if _, err := s.Create(ctx, account.NewUser{Email: "grace@example.com", PasswordHash: "h1", DisplayName: "Grace"}); err != nil {
		t.Fatalf("first Create: %v", err)
	}
	_, err := s.Create(ctx, account.NewUser{Email: "Grace@Example.com", PasswordHash: "h2", DisplayName: "Other"})
	if !errors.Is(err, account.ErrEmailTaken) {
		t.Fatalf("second Create: got %v, want ErrEmailTaken", err)
	}
}

func testUnknown(t *testing.T, s *store.Store) {
	ctx := context.Background()
	id := uuid.New()
	if _, err := s.GetByID(ctx, id); !errors.Is(err, account.ErrNotFound) {
		t.Errorf("GetByID: got %v, want ErrNotFound", err)
	}
	if _, err := s.GetByEmail(ctx, "nobody@example.com"); !errors.Is(err, account.ErrNotFound) {
		t.Errorf("GetByEmail: got %v, want ErrNotFound", err)
	}
	if _, err := s.UpdateDisplayName(ctx, id, "x"); !errors.Is(err, account.ErrNotFound) {
		t.Errorf("UpdateDisplayName: got %v, want ErrNotFound", err)
	}
}

func testUpdate(t *testing.T, s *store.Store) {
	ctx := context.Background()
	u, err := s.Create(ctx, account.NewUser{Email: "linus@example.com", PasswordHash: "h", DisplayName: "Linus"})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	time.Sleep(2 * time.Millisecond)
	got, err := s.UpdateDisplayName(ctx, u.ID, "Linus T.")
	if err != nil {
		t.Fatalf("UpdateDisplayName: %v", err)
	}
	if got.DisplayName != "Linus T." || !got.CreateTime.Equal(u.CreateTime) || !got.UpdateTime.After(u.UpdateTime) {
		t.Fatalf("after update %+v, before %+v", got, u)
	}
	again, err := s.GetByID(ctx, u.ID)
	if err != nil {
		t.Fatalf("GetByID: %v", err)
	}
	if again != got {
		t.Fatalf("GetByID = %+v, want %+v", again, got)
	}
}

func testList(t *testing.T, s *store.Store) {
	ctx := context.Background()
	const total, pageSize = 7, 3
	var want []uuid.UUID
	for i := range total {
		u, err := s.Create(ctx, account.NewUser{
			Email:        "user" + string(rune('a'+i)) + "@example.com",
			PasswordHash: "h",
			DisplayName:  "User",
		})
		if err != nil {
			t.Fatalf("Create %d: %v", i, err)
		}
		want = append(want, u.ID)
	}

	var (
		got   []account.User
		after *account.Cursor
		pages int
	)
	for {
		page, err := s.List(ctx, pageSize, after)
		if err != nil {
			t.Fatalf("List page %d: %v", pages+1, err)
		}
		pages++
		got = append(got, page.Users...)
		if page.Next == nil {
			break
		}
		if len(page.Users) != pageSize {
			t.Fatalf("page %d has %d users and a next cursor", pages, len(page.Users))
		}
		if pages > total {
			t.Fatal("paging does not end")
		}
		after = page.Next
	}
	if pages != 3 {
		t.Errorf("got %d pages, want 3", pages)
	}
	if len(got) != total {
		t.Fatalf("listed %d users, want %d", len(got), total)
	}
	seen := map[uuid.UUID]bool{}
	for i, u := range got {
		if seen[u.ID] {
			t.Fatalf("user %s listed twice", u.ID)
		}
		seen[u.ID] = true
		if i > 0 {
			prev := got[i-1]
			if u.CreateTime.Before(prev.CreateTime) ||
				(u.CreateTime.Equal(prev.CreateTime) && u.ID.String() < prev.ID.String()) {
				t.Fatalf("users out of (create_time, id) order at %d", i)
			}
		}
	}
	for _, id := range want {
		if !seen[id] {
			t.Fatalf("user %s missing from the listing", id)
		}
	}

	if _, err := s.List(ctx, 0, nil); err == nil {
		t.Error("List with page size 0 succeeded")
	}
}

// TestReopen checks that migrating an existing SQLite file keeps its rows.
func TestReopen(t *testing.T) {
	ctx := context.Background()
	cfg := database.Config{DataDir: t.TempDir(), Name: "user"}
	s, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	u, err := s.Create(ctx, account.NewUser{Email: "keep@example.com", PasswordHash: "h", DisplayName: "Keep"})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s = open(t, cfg)
	if _, err := s.GetByID(ctx, u.ID); err != nil {
		t.Fatalf("GetByID after reopen: %v", err)
	}
}
