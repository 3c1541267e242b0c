"""Helpers of the tests that are not tests: a fake LLM server, the DDP worker script, the headless browser driver."""
