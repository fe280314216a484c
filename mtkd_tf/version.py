"""The package's version, in a module of its own: `mtkd_tf.__version__` re-exports it, modules
that record it (the transformers export's config.json) import it from here rather than from the
package, and setup.py reads it from this file's text without importing anything."""

__version__ = "0.2.0"
