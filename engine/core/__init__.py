"""Core types and rules every layer uses; imports nothing above it.

Config, messages, errors, the clock, phone numbers, carriers, SMS arithmetic, templates and
preflight, the compiled kernels, and the plugin host (hook specifications, registries).
"""
