/* Fixture: a second valid plugin, serving another architecture. */
#define ECHO_PLUGIN_NAME "good_b"
#define ECHO_ARCHITECTURE "OtherEchoForCausalLM"
#include "echo_plugin.h"
