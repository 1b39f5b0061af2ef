"The `browser` marker: tests that need Chromium and JupyterLab (skipped unless GAN_ENGINE_BROWSER_TESTS=1)."
def pytest_configure(config):
    config.addinivalue_line("markers", "browser: real-browser tests (JupyterLab + Chromium); run with GAN_ENGINE_BROWSER_TESTS=1")
