"""Triggered flows: flow files, events in, the timers they schedule and the runner that fires them."""
