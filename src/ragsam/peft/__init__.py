"""ragsam.peft"""
