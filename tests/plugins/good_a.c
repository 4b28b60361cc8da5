/* Fixture: a valid plugin serving EchoForCausalLM. */
#define ECHO_PLUGIN_NAME "good_a"
#define ECHO_ARCHITECTURE "EchoForCausalLM"
#include "echo_plugin.h"
