"""The plugin system: what a plugin registers (:mod:`.types`), the hooks it implements
(:mod:`.hookspecs`), how plugins are found and their registrations collected (:mod:`.registry`),
and the core's own hook implementations (:mod:`.core_plugin`)."""
