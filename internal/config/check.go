package config

import (
	"fmt"
	"reflect"
)

// CheckFile reports every problem with data as the seed file of a process
// whose settings are T: YAML that does not parse, unknown keys, values of
// the wrong type, and values T's Validate method refuses once data is laid
// over defaults. name names the file in errors. `keel config push` uses it
// to refuse a bad file before writing anything.
func CheckFile[T any](name string, data []byte, defaults T) error {
	s, err := newSchema(reflect.TypeFor[T]())
	if err != nil {
		return err
	}
	settings, err := s.fileLayer(name, data)
	if err != nil {
		return err
	}
	cfg, err := decode(defaults, settings)
	if err != nil {
		return fmt.Errorf("config: %s: %w", name, err)
	}
	if err := validate(cfg, settings); err != nil {
		return fmt.Errorf("config: %s: %w", name, err)
	}
	return nil
}
