"""mitigation"""
