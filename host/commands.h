/* The `pio` subcommands. Each takes argv starting at the command name and returns the exit
 * status. */
#ifndef PIO_HOST_COMMANDS_H
#define PIO_HOST_COMMANDS_H

int pio_cmd_list(int argc, char **argv);
int pio_cmd_run(int argc, char **argv);
int pio_cmd_chat(int argc, char **argv);
int pio_cmd_logits(int argc, char **argv);
int pio_cmd_bench(int argc, char **argv);
int pio_cmd_serve(int argc, char **argv);
int pio_cmd_tokenize(int argc, char **argv);
int pio_cmd_detokenize(int argc, char **argv);

#endif
