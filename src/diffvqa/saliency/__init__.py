"""diffvqa.saliency"""
