"""oplists"""
