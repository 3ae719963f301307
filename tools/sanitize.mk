# R_MAKEVARS_USER for `make sanitize`: the package's C code with AddressSanitizer and
# UndefinedBehaviorSanitizer (R itself is not instrumented; libasan is preloaded).
CFLAGS = -g -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize=alignment
LDFLAGS += -fsanitize=address,undefined
