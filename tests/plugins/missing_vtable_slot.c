/* Fixture: a vtable without the required chat_completion. */
#define ECHO_PLUGIN_NAME "missing_slot"
#define ECHO_ARCHITECTURE "BrokenForCausalLM"
#define ECHO_CHAT_SLOT NULL
#include "echo_plugin.h"
