pytest_plugins = ("fixtures.options", "fixtures.session", "fixtures.grid")
