#!/bin/sh
# Installs the project into a scratch DESTDIR, builds a plugin out of tree with nothing but
# the installed SDK (pkg-config pio-sdk), checks its exported symbols, loads it with the
# installed pio, then uninstalls. Usage: sdk_out_of_tree.sh BUILD_DIR SANITIZE
set -eu
build=$1
sanitize=$2
scratch=$(mktemp -d /tmp/pio-sdk-XXXXXX)
trap 'rm -rf "$scratch"' EXIT
root=$scratch/root
make -s install DESTDIR="$root" PREFIX=/usr BUILD="$build" SANITIZE="$sanitize" >/dev/null

pc="$root/usr/lib/pkgconfig"
export PKG_CONFIG_PATH="$pc"
cflags=$(pkg-config --define-prefix --cflags pio-sdk)
libs=$(pkg-config --define-prefix --static --libs pio-sdk)
plugin_ldflags=$(pkg-config --define-prefix --variable=plugin_ldflags pio-sdk)
case "$cflags" in *"$root/usr/include"*) ;; *) echo "cflags do not point into DESTDIR: $cflags"; exit 1;; esac

# Copy the source so nothing of the source tree is on the include path.
mkdir -p "$scratch/consumer"
cp tests/sdk_consumer/consumer_plugin.c "$scratch/consumer/"
san=""
[ "$sanitize" = 1 ] && san="-fsanitize=address,undefined"
cc -std=c11 -Wall -Wextra -Werror -fPIC $san $cflags -c "$scratch/consumer/consumer_plugin.c" \
   -o "$scratch/consumer/consumer_plugin.o"
cc $san $plugin_ldflags -o "$scratch/consumer/consumer.so" "$scratch/consumer/consumer_plugin.o" $libs

# Every installed header compiles on its own with the pkg-config flags.
for header in "$root"/usr/include/pio/*.h "$root"/usr/include/pio/kernels/*.h; do
    name=${header#"$root"/usr/include/}
    printf '#include <%s>\nint pio_header_check;\n' "$name" > "$scratch/header_check.c"
    cc -std=c11 -Wall -Wextra -Werror $cflags -c "$scratch/header_check.c" -o "$scratch/header_check.o" ||
        { echo "installed header does not compile alone: $name"; exit 1; }
done

exported=$(nm -D --defined-only "$scratch/consumer/consumer.so" | awk '{print $3}')
[ "$exported" = "pio_plugin_entry" ] || { echo "exports: $exported"; exit 1; }

out=$("$root/usr/bin/pio" list --plugin-dir "$scratch/consumer")
echo "$out" | grep -q "^consumer .*ConsumerForCausalLM" || { echo "$out"; exit 1; }
answer=$("$root/usr/bin/pio" run --plugin-dir "$scratch/consumer" --plugin consumer \
         --set model.load_format=dummy -p "question" 2>/dev/null)
[ "$answer" = "42" ] || { echo "answer: $answer"; exit 1; }

for f in usr/bin/pio usr/include/pio/plugin.h usr/lib/libpio_sdk.a usr/lib/pio/plugin.map; do
    [ -f "$root/$f" ] || { echo "missing after install: $f"; exit 1; }
done
make -s uninstall DESTDIR="$root" PREFIX=/usr BUILD="$build" SANITIZE="$sanitize" >/dev/null
left=$(find "$root" -type f | wc -l)
[ "$left" -eq 0 ] || { echo "uninstall left files:"; find "$root" -type f; exit 1; }
echo "out-of-tree plugin built, loaded and answered; uninstall clean"
