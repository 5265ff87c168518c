"""For scrapyd-deploy, which builds the project's egg with ``setup.py bdist_egg``.

Everything (name, version, the ``scraper`` packages, the ``scrapy`` entry point naming
the settings module that scrapyd's runner loads) comes from pyproject.toml; without
this file scrapyd-deploy writes its own, which packages ``tests`` and ``bench`` too.
"""

from setuptools import setup

setup()
