"""diffvqa.data"""
