"""Processes: the supervisor that binds once and keeps N workers alive, the worker entry point,
and the ``ringpipe`` command line.
"""
