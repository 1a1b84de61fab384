"""Offline work: sources, prompt templates, encoding, projection, neighbours, scoring.

Modules that need torch import it lazily inside functions; the web process never imports this
package's model code.
"""
