"""kjax output directories: writing them atomically and reading them back checked
(:mod:`.output`), Flax's msgpack bytes written one array at a time (:mod:`.msgpack_stream`)."""
