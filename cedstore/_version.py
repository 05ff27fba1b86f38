"""The package version, in a module of its own so that any module can import it without the
package face (``cedstore/__init__.py``) and setup.py can read it without importing cedstore."""

__version__ = "0.1.0"
