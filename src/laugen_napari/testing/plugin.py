"""pytest plugin entry point (registered as ``pytest11``); fixtures and assertions come with issue 11."""
