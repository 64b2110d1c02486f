"""A site's reviewer's tools, on the reviewer's own machine: the review of a bundle, the
reviewer's key pair, and signing approvals and revocations for a site.
"""
