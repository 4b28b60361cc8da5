#!/bin/sh
# Runs each test program given as an argument from the repository root and prints one
# summary line "N passed, N failed" (counting test programs). Exit status 1 if any failed.
passed=0
failed=0
failed_names=""
for test in "$@"; do
    name=$(basename "$test")
    echo "=== $name"
    if "$test"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        failed_names="$failed_names $name"
    fi
done
echo
[ -n "$failed_names" ] && echo "failed test programs:$failed_names"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
