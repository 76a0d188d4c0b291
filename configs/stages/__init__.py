"""The shipped stage recipes, installed as package data: `onellm train stage1_image`."""
