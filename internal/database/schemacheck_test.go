package database_test

import (
	"context"
	"strings"
	"testing"
	"testing/fstest"

	"entgo.io/ent/dialect/sql/schema"
	"entgo.io/ent/schema/field"

	"github.com/keelplatform/keel/internal/database"
)

// things is an ent table as a generated migrate package declares it.
// extra adds columns, as an ent schema change would.
func things(extra ...*schema.Column) []*schema.Table {
	cols := append([]*schema.Column{
		{Name: "id", Type: field.TypeString},
		{Name: "name", Type: field.TypeString, Nullable: true},
		{Name: "rank", Type: field.TypeInt},
	}, extra...)
	return []*schema.Table{{
		Name:       "things",
		Columns:    cols,
		PrimaryKey: cols[:1],
		Indexes:    []*schema.Index{{Name: "thing_name", Unique: true, Columns: cols[1:2]}},
	}}
}

// thingsDDL is the DDL ent's auto-migration runs for things() on an empty
// database, one statement a line.
var thingsDDL = map[string][]string{
	database.DriverSQLite: {
		"CREATE TABLE `things` (`id` text NOT NULL, `name` text NULL, `rank` integer NOT NULL, PRIMARY KEY (`id`));",
		"CREATE UNIQUE INDEX `thing_name` ON `things` (`name`);",
	},
	database.DriverPostgres: {
		`CREATE TABLE "things" ("id" character varying NOT NULL, "name" character varying NULL, "rank" bigint NOT NULL, PRIMARY KEY ("id"));`,
		`CREATE UNIQUE INDEX "thing_name" ON "things" ("name");`,
	},
}

func TestCheckMigrationsMatchSchema(t *testing.T) {
	tests := []struct {
		name   string
		edit   func(driver string, ddl []string) []string // the migration, from thingsDDL
		tables []*schema.Table
		before string // run on the database first
		want   []string
	}{
		{name: "match"},
		{
			name:   "ent column without a migration",
			tables: things(&schema.Column{Name: "color", Type: field.TypeString, Nullable: true}),
			want:   []string{"do not create the ent schema", "ADD COLUMN", "color"},
		},
		{
			name: "migration column not in ent",
			edit: func(_ string, ddl []string) []string {
				return append(ddl, "ALTER TABLE things ADD COLUMN legacy integer;")
			},
			want: []string{"do not create the ent schema"},
		},
		{
			name: "index missing",
			edit: func(_ string, ddl []string) []string { return ddl[:1] },
			want: []string{"do not create the ent schema", "thing_name"},
		},
		{
			name: "index not unique",
			edit: func(_ string, ddl []string) []string {
				return []string{ddl[0], strings.Replace(ddl[1], "UNIQUE ", "", 1)}
			},
			want: []string{"do not create the ent schema", "UNIQUE INDEX", "thing_name"},
		},
		{
			name: "nullable column",
			edit: func(driver string, ddl []string) []string {
				notNull := map[string]string{
					database.DriverSQLite:   "`rank` integer NOT NULL",
					database.DriverPostgres: `"rank" bigint NOT NULL`,
				}[driver]
				return []string{strings.Replace(ddl[0], notNull, strings.TrimSuffix(notNull, " NOT NULL"), 1), ddl[1]}
			},
			want: []string{"do not create the ent schema"},
		},
		{
			name: "table not in ent",
			edit: func(_ string, ddl []string) []string {
				return append(ddl, "CREATE TABLE leftovers (x integer);")
			},
			want: []string{`create "leftovers", which is not in the ent schema`},
		},
		{
			name:   "database not empty",
			before: "CREATE TABLE earlier (x integer)",
			want:   []string{"must be empty, it has earlier"},
		},
		{
			name: "migration fails",
			edit: func(_ string, ddl []string) []string { return append(ddl, "INSERT INTO nowhere VALUES (1);") },
			want: []string{`migration 1 "init"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			forEachBackend(t, func(t *testing.T, cfg database.Config) {
				ctx := context.Background()
				db := open(t, cfg)
				if tt.before != "" {
					if err := db.Driver().Exec(ctx, tt.before, []any{}, nil); err != nil {
						t.Fatal(err)
					}
				}
				fsys := fstest.MapFS{}
				for driver, ddl := range thingsDDL {
					ddl = append([]string(nil), ddl...)
					if tt.edit != nil {
						ddl = tt.edit(driver, ddl)
					}
					fsys[driver+"/1_init.sql"] = &fstest.MapFile{Data: []byte(strings.Join(ddl, "\n"))}
				}
				tables := tt.tables
				if tables == nil {
					tables = things()
				}

				err := database.CheckMigrationsMatchSchema(ctx, db, fsys, tables)
				if len(tt.want) == 0 {
					if err != nil {
						t.Fatal(err)
					}
					return
				}
				if err == nil {
					t.Fatal("CheckMigrationsMatchSchema succeeded")
				}
				for _, w := range tt.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error does not contain %q:\n%v", w, err)
					}
				}
			})
		})
	}
}
