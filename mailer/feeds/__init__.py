"""Articles from RSS and Atom feeds: the second way in, beside file import.

fetch  one HTTP GET done like a good citizen (timeouts, size cap, conditional GET, gzip,
       redirects seen hop by hop); feedparser never fetches anything itself.
parse  feedparser on the fetched bytes, each item turned into clean text by lxml.
"""
