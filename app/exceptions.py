"""Errors raised by the app package.

AppError
└── ConfigError   a configuration file or value is invalid (message says which)
"""

from __future__ import annotations


class AppError(Exception):
    """Base class of the app package's errors."""


class ConfigError(AppError, ValueError):
    """The configuration is invalid; the message names the file, key and problem."""
