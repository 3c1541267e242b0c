"""diffvqa.model"""
