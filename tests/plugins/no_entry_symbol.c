/* Fixture: a shared object that exports something, but not pio_plugin_entry. */
__attribute__((visibility("default"))) int not_the_entry_point(void);
__attribute__((visibility("default"))) int not_the_entry_point(void) { return 42; }
