pytest_plugins = ("fixtures.options", "fixtures.controller", "fixtures.runs")
