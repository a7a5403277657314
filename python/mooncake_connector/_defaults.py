"""Defaults shared by the connector and the loaders, in a module without
torch: importing torch takes 1.5-2.5 s, so the connector imports it (and the
modules that need it) only when a call handles tensors, and the CLI's
commands that never do (ls, inspect, verify, rm, put, get) start quickly."""

# One batched store call moves at most this many bytes (and at least one value).
DEFAULT_BATCH_BYTES = 256 << 20

# The batches of save_state_dict, save_files and save_directory: the sources
# (the caller's tensors, the folder's mapped files) are written straight from
# where they are (or through the fixed staging slots), so a batch costs no
# memory, and one batch is one native write call (up to 1 GiB). Fewer, larger
# calls save faster (cold own-mode saves of 1.1 GiB on two cores: 0.70-0.94x
# the raw wheel in 256 MiB batches, 0.84-1.03x in 1 GiB ones,
# bench/results/save_batch.txt; save_directory of 1.1 GiB: 0.58-0.70 s against
# 0.69-0.74 s, bench/results/save_directory_batches.txt); a batch is also a
# save's unit of progress and of resumption (an interrupted save writes its
# unfinished batch again) and where save_directory checks that no file
# changed under it (so a shard rewritten mid-save is noticed within 1 GiB).
SAVE_BATCH_BYTES = 1 << 30

# weight_iterator's batches (not cooperative): it holds about one batch and
# part of the next while its consumer copies, so half the default batch keeps
# what is in flight within 256 MiB (238 MiB measured for a 1.1 GiB model,
# against 358 MiB at 256 MiB batches) at the same speed.
ITERATOR_BATCH_BYTES = 128 << 20
