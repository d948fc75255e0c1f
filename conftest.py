pytest_plugins = ("fixtures.options", "fixtures.stack", "fixtures.grid", "fixtures.promotion")
